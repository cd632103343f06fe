//! The async shell around [`Session`]: one task owns the socket and the session, the
//! [`Client`] handle talks to it over a bounded command channel, and the application reads
//! [`Events`] and [`Snapshot`]s. The task turns its clocks into the session's millisecond
//! [`Now`] ([`now_since`]) and carries out what the session decides, a server's close code
//! included ([`Session::on_server_close`]): retry after the backoff, or stop and report
//! ([`Event::Disconnected`] with `fatal`, [`Snapshot::stopped_by`]).
//!
//! # Soft locks
//!
//! [`Client::lock`] and [`Client::unlock`] send PROTOCOL §7's messages; [`Client::locks`] (and
//! [`Snapshot::locks`]) is the room's table as last heard, and [`Event::Locks`] /
//! [`Event::Locked`] report a change and a refusal. For a gesture that lasts (a drag, a rename),
//! [`Client::hold_lock`] takes the lock and refreshes it every half `ttl` until its
//! [`LockGuard`] is released or dropped, which unlocks. While offline nothing is sent; the next
//! refresh after the reconnect takes the lock again (a connection that left lost its locks).
//!
//! # Failover
//!
//! A client may know several servers of the same room ([`ClientConfig::failover_urls`], after
//! [`ClientConfig::base_url`]; or [`ClientConfig::with_urls`]). It moves on to the next one,
//! cyclically, when the one it uses stops answering: a refused or failed connect, a handshake
//! that takes longer than [`ClientConfig::connect_timeout`], or a socket that dies on its own
//! (ended, reset, no frame for [`ClientConfig::idle_timeout`]). A socket the application
//! closes or kills, and a server's close frame, keep the URL. Every attempt waits the backoff
//! first ([`ClientConfig::backoff`]: the delay grows with each failed attempt, whichever URL it
//! went to, and starts over once a connection is live), so a list of dead servers is not
//! spun through. On the new server the session rejoins as after any reconnect: with `since`,
//! and the op in flight is resent with its original `opId` and `baseVersion`, so the server
//! that finds it in the log answers with its original version. [`Snapshot::url`] is the
//! server in use and [`Snapshot::failovers`] counts connects to a different one than before.
//!
//! # Slow-consumer policy
//!
//! The task never blocks on the application. Events go into a bounded queue
//! ([`ClientConfig::events_capacity`]); when it is full the event is discarded and counted in
//! [`Snapshot::events_lagged`]. Events are notifications: the [`Snapshot`] (document, version,
//! presence, transport) is always current.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use ot_core::protocol::{
    decode_server, lock_ttl_ms, ClientMsg, Close, CloseAction, Lock, Presence, TransportState, CONNECTION_ID_MAX,
    ROOM_ID_MAX,
};
use ot_core::sync::UndoOutcome;
use ot_core::{Document, EntityKind, Op, OpError};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::backoff::{Backoff, BackoffConfig};
use crate::endpoint::{check_id, BaseUrl, EndpointError, UrlForm};
use crate::session::{ClockEstimate, Effect, Event, Now, ServerClose, Session};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a [`Client`] connects and behaves.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The server, e.g. `ws://127.0.0.1:1999`: the first one tried.
    pub base_url: String,
    /// Further servers of the same room, tried in order after `base_url` when the one in use
    /// stops answering, then `base_url` again (see the module docs, "Failover"). Empty: only
    /// `base_url`.
    pub failover_urls: Vec<String>,
    /// Which socket path to use.
    pub form: UrlForm,
    /// The room (project) id.
    pub room: String,
    /// A room token for `room`.
    pub token: String,
    /// The connection id (`_pk`), kept across reconnects; also the op id prefix.
    pub pk: String,
    /// Seed of the reconnect jitter.
    pub seed: u64,
    /// Reconnect delays.
    pub backoff: BackoffConfig,
    /// How often to ping (for the clock estimate and liveness).
    pub ping_interval: Duration,
    /// A socket silent this long (no frame at all) is taken as dead and replaced.
    pub idle_timeout: Duration,
    /// How long one connect attempt may take.
    pub connect_timeout: Duration,
    /// The event queue's bound (see the module docs).
    pub events_capacity: usize,
    /// Added one-way latency on every frame in each direction (for testing; zero normally).
    pub latency: Duration,
    /// Op ids are `{prefix}:{n}`. `None` (the default): the connection id and a random part,
    /// so a client made again with a saved `pk` never reuses an earlier client's op ids (the
    /// server would answer them with the earlier ops: PROTOCOL §4, exactly once).
    pub op_id_prefix: Option<String>,
}

impl ClientConfig {
    /// A config with the defaults: `/parties/main/` path, 100 ms–10 s backoff, ping every 5 s,
    /// 30 s idle timeout, 1024 queued events.
    pub fn new(
        base_url: impl Into<String>,
        room: impl Into<String>,
        token: impl Into<String>,
        pk: impl Into<String>,
    ) -> Self {
        ClientConfig {
            base_url: base_url.into(),
            failover_urls: Vec::new(),
            form: UrlForm::Parties,
            room: room.into(),
            token: token.into(),
            pk: pk.into(),
            seed: 0,
            backoff: BackoffConfig::default(),
            ping_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            events_capacity: 1024,
            latency: Duration::ZERO,
            op_id_prefix: None,
        }
    }

    /// Like [`ClientConfig::new`] with several servers of the same room: the first is
    /// `base_url`, the rest [`ClientConfig::failover_urls`]. An empty list leaves `base_url`
    /// empty, which [`Client::connect`] refuses ([`EndpointError::NoUrl`]).
    pub fn with_urls<S: Into<String>>(
        urls: impl IntoIterator<Item = S>,
        room: impl Into<String>,
        token: impl Into<String>,
        pk: impl Into<String>,
    ) -> Self {
        let mut urls = urls.into_iter().map(Into::into);
        let first = urls.next().unwrap_or_default();
        let mut c = ClientConfig::new(first, room, token, pk);
        c.failover_urls = urls.collect();
        c
    }

    /// Every server, in the order tried: `base_url`, then `failover_urls`.
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.base_url.as_str()).chain(self.failover_urls.iter().map(String::as_str))
    }
}

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// A bad URL or id.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The edit does not apply to the local document (nothing changed).
    #[error("edit rejected locally: {0}")]
    Op(#[from] OpError),
    /// The client task has stopped (closed, or gave up).
    #[error("client stopped{}", .0.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Stopped(Option<String>),
    /// Waiting took longer than allowed.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
}

/// What the application can read at any time.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The local document (server state plus pending local ops), once loaded.
    pub doc: Option<Document>,
    /// The last version the server confirmed.
    pub version: Option<u64>,
    /// Whether local ops wait for an ack.
    pub pending: bool,
    /// Whether the socket is open and `init` arrived.
    pub live: bool,
    /// This connection's id.
    pub your_id: Option<String>,
    /// Everyone in the room, by connection id.
    pub users: Arc<BTreeMap<String, Presence>>,
    /// The transport as last heard or set.
    pub transport: Option<TransportState>,
    /// The room's soft locks as last heard.
    pub locks: Arc<Vec<Lock>>,
    /// The best server clock estimate.
    pub clock: Option<ClockEstimate>,
    /// Successful connects after the first.
    pub reconnects: u64,
    /// Successful connects to a different server than the previous successful connect (see
    /// the module docs, "Failover").
    pub failovers: u64,
    /// The server in use, or tried next while offline, as given in the config.
    pub url: String,
    /// Events discarded because the queue was full.
    pub events_lagged: u64,
    /// Why the client gave up, if it did.
    pub fatal: Option<String>,
    /// The server's close that stopped the client, if one did (a [`CloseAction::Stop`] code:
    /// [`Close::Replaced`] when a newer connection with the same connection id took over).
    pub stopped_by: Option<Close>,
    /// Whether there is a step to undo (see [`Client::undo`]).
    pub can_undo: bool,
    /// Whether there is a step to redo.
    pub can_redo: bool,
}

/// An event with the instant the client task produced it.
#[derive(Clone, Debug)]
pub struct Stamped {
    /// When it happened.
    pub at: Instant,
    /// What happened.
    pub event: Event,
}

/// The stream of [`Event`]s of one client (see the module docs for its bound).
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Stamped>,
}

impl Events {
    /// The next event; `None` once the client stopped and the queue is drained.
    pub async fn recv(&mut self) -> Option<Stamped> {
        self.rx.recv().await
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<Stamped> {
        self.rx.try_recv().ok()
    }
}

type EditFn = Box<dyn FnOnce(&Document) -> Vec<Op> + Send>;

enum Command {
    Submit(Vec<Op>, oneshot::Sender<Result<(), OpError>>),
    Edit(EditFn, oneshot::Sender<Result<Vec<Op>, OpError>>),
    /// Undo (`true`) or redo (`false`).
    Undo(bool, oneshot::Sender<Result<UndoOutcome, OpError>>),
    /// Begin (`true`) or end (`false`) an undo group.
    Group(bool),
    Send(ClientMsg),
    Transport(bool, f64),
    Disconnect,
    Kill,
    Stall(Duration),
    Duplicate,
    SetUrls(Vec<(String, BaseUrl)>),
    Close(oneshot::Sender<()>),
}

/// A connection to one room. Cheap to share by reference; dropping it stops the client.
///
/// See the crate docs for an example.
#[derive(Debug)]
pub struct Client {
    cmd: mpsc::Sender<Command>,
    state: watch::Receiver<Snapshot>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl Client {
    /// Starts the client task (it connects, and reconnects, in the background). Call
    /// [`Client::ready`] to wait for the first `init`.
    pub fn connect(config: ClientConfig) -> Result<(Client, Events), ClientError> {
        if config.base_url.is_empty() {
            return Err(EndpointError::NoUrl.into());
        }
        let urls =
            config.urls().map(|u| BaseUrl::parse(u).map(|b| (u.to_string(), b))).collect::<Result<Vec<_>, _>>()?;
        check_id(&config.room, ROOM_ID_MAX)?;
        check_id(&config.pk, CONNECTION_ID_MAX)?;
        let (cmd_tx, cmd_rx) = mpsc::channel(256);
        let (ev_tx, ev_rx) = mpsc::channel(config.events_capacity.max(1));
        let (state_tx, state_rx) = watch::channel(Snapshot::default());
        let mut session = Session::new(config.pk.clone());
        let prefix = config.op_id_prefix.clone();
        session.set_op_id_prefix(prefix.unwrap_or_else(|| format!("{}.{:08x}", config.pk, rand::random::<u32>())));
        let task = Task {
            session,
            backoff: Backoff::new(config.backoff, config.seed),
            urls,
            current: 0,
            live_on: None,
            config,
            cmd_rx,
            ev_tx,
            state_tx,
            reconnects: 0,
            failovers: 0,
            connects: 0,
            lagged: 0,
            fatal: None,
            stopped_by: None,
            start: Instant::now(),
        };
        let handle = tokio::spawn(task.run());
        Ok((Client { cmd: cmd_tx, state: state_rx, task: Some(handle) }, Events { rx: ev_rx }))
    }

    /// Waits until the session is live (socket open and `init` received).
    pub async fn ready(&self, timeout: Duration) -> Result<(), ClientError> {
        self.wait_for(timeout, "init", |s| s.live).await
    }

    /// Waits until the session is live with nothing pending (every local op acknowledged).
    pub async fn settled(&self, timeout: Duration) -> Result<(), ClientError> {
        self.wait_for(timeout, "all local ops to be acknowledged", |s| s.live && !s.pending).await
    }

    async fn wait_for(
        &self,
        timeout: Duration,
        what: &'static str,
        f: impl Fn(&Snapshot) -> bool,
    ) -> Result<(), ClientError> {
        let mut rx = self.state.clone();
        let res = tokio::time::timeout(timeout, async {
            loop {
                {
                    let s = rx.borrow_and_update();
                    if let Some(reason) = &s.fatal {
                        return Err(ClientError::Stopped(Some(reason.clone())));
                    }
                    if f(&s) {
                        return Ok(());
                    }
                }
                if rx.changed().await.is_err() {
                    return Err(ClientError::Stopped(rx.borrow().fatal.clone()));
                }
            }
        })
        .await;
        res.unwrap_or(Err(ClientError::Timeout(timeout, what)))
    }

    /// The current state.
    pub fn snapshot(&self) -> Snapshot {
        self.state.borrow().clone()
    }

    /// The local document (server state plus pending local edits), once loaded.
    pub fn document(&self) -> Option<Document> {
        self.state.borrow().doc.clone()
    }

    /// Everyone in the room, by connection id.
    pub fn presence(&self) -> Arc<BTreeMap<String, Presence>> {
        self.state.borrow().users.clone()
    }

    /// The transport as last heard or set.
    pub fn transport_state(&self) -> Option<TransportState> {
        self.state.borrow().transport.clone()
    }

    /// The room's soft locks as last heard (see the module docs).
    pub fn locks(&self) -> Arc<Vec<Lock>> {
        self.state.borrow().locks.clone()
    }

    /// Takes or refreshes the lock on `target` `id` for `ttl` (`None`: the server's default of
    /// 10 s; at most 60 s). Sent only while connected; the answer is a change of
    /// [`Client::locks`] with [`Event::Locks`], or an error event ([`Event::Locked`] when
    /// someone else holds it).
    pub async fn lock(&self, target: EntityKind, id: &str, ttl: Option<Duration>) -> Result<(), ClientError> {
        let ttl = ttl.map(|d| d.as_millis().min(u64::MAX as u128) as f64);
        self.send(Command::Send(ClientMsg::Lock { target: target.as_str().into(), id: id.into(), ttl })).await
    }

    /// Releases the lock on `target` `id` (the server ignores it if this connection does not
    /// hold that lock).
    pub async fn unlock(&self, target: EntityKind, id: &str) -> Result<(), ClientError> {
        self.send(Command::Send(ClientMsg::Unlock { target: target.as_str().into(), id: id.into() })).await
    }

    /// Takes the lock on `target` `id` and keeps it for as long as the returned guard lives:
    /// the lock is sent again every half `ttl` (default 10 s, at most 60 s; a zero `ttl` is the
    /// default; never more often than every [`MIN_REFRESH_MS`] ms), and
    /// [`LockGuard::release`] or dropping the guard sends `unlock`. The lock itself may still be
    /// refused (it is someone else's): watch [`Client::locks`] or the events.
    pub fn hold_lock(&self, target: EntityKind, id: &str, ttl: Option<Duration>) -> LockGuard {
        // A zero ttl (which the server would refuse) holds with the default instead.
        let ttl_ms = lock_ttl_ms(ttl.map(|d| d.as_millis().min(u64::MAX as u128) as f64))
            .unwrap_or(ot_core::protocol::LOCK_TTL_DEFAULT_MS);
        let period = Duration::from_millis((ttl_ms / 2).max(MIN_REFRESH_MS));
        let lock = ClientMsg::Lock { target: target.as_str().into(), id: id.into(), ttl: Some(ttl_ms as f64) };
        let unlock = ClientMsg::Unlock { target: target.as_str().into(), id: id.into() };
        let (stop_tx, mut stop) = oneshot::channel::<()>();
        let cmd = self.cmd.clone();
        let task = tokio::spawn(async move {
            loop {
                if cmd.send(Command::Send(lock.clone())).await.is_err() {
                    return; // the client stopped: nothing to hold or release
                }
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    // Released, or the guard dropped: both end the hold.
                    _ = &mut stop => break,
                }
            }
            // The client may have stopped meanwhile; then its connection's locks went with it.
            let _ = cmd.send(Command::Send(unlock)).await;
        });
        LockGuard { stop: Some(stop_tx), task: Some(task) }
    }

    /// A watch on the state, for waiting on changes.
    pub fn watch(&self) -> watch::Receiver<Snapshot> {
        self.state.clone()
    }

    async fn send(&self, cmd: Command) -> Result<(), ClientError> {
        self.cmd.send(cmd).await.map_err(|_| ClientError::Stopped(self.state.borrow().fatal.clone()))
    }

    /// Applies `ops` locally at once and sends them when the op before them is acknowledged.
    /// Errors if they do not apply to the local document (which then is unchanged).
    pub async fn submit(&self, ops: Vec<Op>) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Submit(ops, tx)).await?;
        rx.await.map_err(|_| ClientError::Stopped(None))?.map_err(ClientError::Op)
    }

    /// Undoes this person's last undo step that still means something (never anyone else's
    /// edit), as an ordinary edit sent like [`Client::submit`]'s; steps that became empty (their
    /// entity deleted or their value overwritten by someone else since) are skipped and
    /// counted. Edits submitted less than 500 ms apart are one step (see
    /// [`ot_core::sync::UndoConfig`]), and so is every edit between [`Client::begin_group`]
    /// and [`Client::end_group`].
    pub async fn undo(&self) -> Result<UndoOutcome, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Undo(true, tx)).await?;
        rx.await.map_err(|_| ClientError::Stopped(None))?.map_err(ClientError::Op)
    }

    /// Redoes the last undone step; a new edit clears the redo stack.
    pub async fn redo(&self) -> Result<UndoOutcome, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Undo(false, tx)).await?;
        rx.await.map_err(|_| ClientError::Stopped(None))?.map_err(ClientError::Op)
    }

    /// Whether there is a step to undo (as of the last published state).
    pub fn can_undo(&self) -> bool {
        self.state.borrow().can_undo
    }

    /// Whether there is a step to redo (as of the last published state).
    pub fn can_redo(&self) -> bool {
        self.state.borrow().can_redo
    }

    /// Opens an undo group: the edits until [`Client::end_group`] are one undo step (a drag).
    pub async fn begin_group(&self) -> Result<(), ClientError> {
        self.send(Command::Group(true)).await
    }

    /// Closes the undo group opened by [`Client::begin_group`].
    pub async fn end_group(&self) -> Result<(), ClientError> {
        self.send(Command::Group(false)).await
    }

    /// Like [`Client::submit`], with ops made by `make` from the exact local document they will
    /// be applied to. Returns the ops submitted (none when `make` returns none).
    pub async fn edit<F>(&self, make: F) -> Result<Vec<Op>, ClientError>
    where
        F: FnOnce(&Document) -> Vec<Op> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Edit(Box::new(make), tx)).await?;
        rx.await.map_err(|_| ClientError::Stopped(None))?.map_err(ClientError::Op)
    }

    /// Sends a cursor position (dropped while disconnected: cursors are ephemeral).
    pub async fn cursor(&self, x: f64, y: f64) -> Result<(), ClientError> {
        self.send(Command::Send(ClientMsg::Cursor { x, y, selection: None })).await
    }

    /// Play, pause or seek for everyone.
    pub async fn transport(&self, playing: bool, position: f64) -> Result<(), ClientError> {
        self.send(Command::Transport(playing, position)).await
    }

    /// Closes the socket cleanly (code 1000); the client reconnects after its backoff.
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        self.send(Command::Disconnect).await
    }

    /// Drops the TCP connection abruptly (reset, no close frame); the client reconnects.
    pub async fn kill(&self) -> Result<(), ClientError> {
        self.send(Command::Kill).await
    }

    /// Stops reading the socket for `d` (a stalled consumer, for fault tests).
    pub async fn stall(&self, d: Duration) -> Result<(), ClientError> {
        self.send(Command::Stall(d)).await
    }

    /// Sends the op in flight again on the open socket (the server must apply it once).
    pub async fn duplicate_inflight(&self) -> Result<(), ClientError> {
        self.send(Command::Duplicate).await
    }

    /// Connects to another server from the next (re)connect on (after a server moved); it
    /// replaces the whole list, failover servers included.
    pub async fn set_base_url(&self, url: &str) -> Result<(), ClientError> {
        self.set_urls(&[url]).await
    }

    /// Replaces the servers (the first is tried first; see the module docs, "Failover"), from
    /// the next (re)connect on. An empty list is refused ([`EndpointError::NoUrl`]).
    pub async fn set_urls<S: AsRef<str>>(&self, urls: &[S]) -> Result<(), ClientError> {
        let parsed = urls
            .iter()
            .map(|u| BaseUrl::parse(u.as_ref()).map(|b| (u.as_ref().to_string(), b)))
            .collect::<Result<Vec<_>, _>>()?;
        if parsed.is_empty() {
            return Err(EndpointError::NoUrl.into());
        }
        self.send(Command::SetUrls(parsed)).await
    }

    /// Closes the socket (code 1000) and stops the task.
    pub async fn close(mut self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Close(tx)).await.is_ok() {
            // The task answers once the socket is closed; an error means it already stopped.
            let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        }
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(2), task).await.is_err() {
                tracing::warn!("client task did not stop within 2 s");
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// The shortest refresh period of [`Client::hold_lock`], in milliseconds: a tiny `ttl` does not
/// turn into a flood of `lock` messages (it may expire between refreshes instead).
pub const MIN_REFRESH_MS: u64 = 10;

/// A lock held by [`Client::hold_lock`]: refreshed until released or dropped, then unlocked.
#[derive(Debug)]
pub struct LockGuard {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl LockGuard {
    /// Stops refreshing and sends `unlock`, waiting (up to 2 s) until it is queued.
    pub async fn release(mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            // Bounded; the refresher ends at once unless the command queue is full.
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Dropping the sender ends the refresher, which sends `unlock` on its own.
        self.stop.take();
    }
}

/// How a connection ended.
enum End {
    /// Reconnect after the backoff, to the same server (the application ended the socket, or
    /// the server broke the protocol).
    Retry(String),
    /// The server stopped answering (connect refused or timed out, the socket died on its
    /// own): the next server after the backoff.
    Lost(String),
    /// Reconnect at once (a reload or a resync).
    Now(String),
    /// Stop: closed by the application (with the acknowledgement it waits for, if any).
    Stop(Option<oneshot::Sender<()>>),
    /// The server closed the socket; the session decided whether to come back.
    Server(ServerClose),
}

struct Task {
    session: Session,
    backoff: Backoff,
    /// The servers as given and parsed; never empty.
    urls: Vec<(String, BaseUrl)>,
    /// The index in `urls` of the server in use or tried next.
    current: usize,
    /// The server of the last successful connect.
    live_on: Option<String>,
    config: ClientConfig,
    cmd_rx: mpsc::Receiver<Command>,
    ev_tx: mpsc::Sender<Stamped>,
    state_tx: watch::Sender<Snapshot>,
    reconnects: u64,
    failovers: u64,
    connects: u64,
    lagged: u64,
    fatal: Option<String>,
    stopped_by: Option<Close>,
    /// The origin of the session's monotonic clock.
    start: Instant,
}

/// The session's [`Now`] from the system clocks: monotonic milliseconds since `start`, and the
/// wall clock in milliseconds since the Unix epoch.
pub fn now_since(start: Instant) -> Now {
    let epoch_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    Now { mono_ms: start.elapsed().as_millis() as u64, epoch_ms }
}

/// A FIFO of frames held back by the added latency.
struct Delay<T> {
    latency: Duration,
    q: VecDeque<(Instant, T)>,
}

impl<T> Delay<T> {
    fn push(&mut self, item: T) {
        self.q.push_back((Instant::now() + self.latency, item));
    }
    fn next_due(&self) -> Option<Instant> {
        self.q.front().map(|(t, _)| *t)
    }
    fn pop_due(&mut self, now: Instant) -> Option<T> {
        match self.q.front() {
            Some((t, _)) if *t <= now => self.q.pop_front().map(|(_, x)| x),
            _ => None,
        }
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}

impl Task {
    fn emit(&mut self, event: Event) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.ev_tx.try_send(Stamped { at: Instant::now(), event }) {
            // Slow consumer: discard and count (see the module docs). A closed receiver means
            // the application does not want events: nothing to count.
            self.lagged += 1;
        }
    }

    fn publish(&mut self) {
        let s = &self.session;
        self.state_tx.send_replace(Snapshot {
            doc: s.doc().cloned(),
            version: s.version(),
            pending: s.has_pending(),
            live: s.is_live(),
            your_id: s.your_id().map(str::to_string),
            users: s.users().clone(),
            transport: s.transport().cloned(),
            locks: s.locks().clone(),
            clock: s.clock(),
            reconnects: self.reconnects,
            failovers: self.failovers,
            url: self.urls.get(self.current).map(|(u, _)| u.clone()).unwrap_or_default(),
            events_lagged: self.lagged,
            fatal: self.fatal.clone(),
            stopped_by: self.stopped_by,
            can_undo: s.can_undo(),
            can_redo: s.can_redo(),
        });
    }

    async fn run(mut self) {
        loop {
            let Some((given, base)) = self.urls.get(self.current).cloned() else {
                // Unreachable: `urls` is never empty and `current` stays in range.
                self.fatal = Some("no server URL".into());
                self.publish();
                return;
            };
            let url = base.socket(
                self.config.form,
                &self.config.room,
                &self.config.token,
                &self.config.pk,
                self.session.since(),
            );
            let attempt = tokio::time::timeout(
                self.config.connect_timeout,
                tokio_tungstenite::connect_async_with_config(url, None, true),
            )
            .await;
            let end = match attempt {
                Ok(Ok((ws, _resp))) => {
                    self.connects += 1;
                    if self.connects > 1 {
                        self.reconnects += 1;
                    }
                    if self.live_on.as_ref().is_some_and(|u| *u != given) {
                        self.failovers += 1;
                    }
                    self.live_on = Some(given.clone());
                    self.run_socket(ws).await
                }
                Ok(Err(e)) => End::Lost(format!("connect to {given} failed: {e}")),
                Err(_) => End::Lost(format!("connect to {given} timed out")),
            };
            self.session.on_close();
            let delay = match end {
                End::Stop(ack) => {
                    self.publish();
                    if let Some(ack) = ack {
                        // The application waits for this; it may have stopped waiting.
                        let _ = ack.send(());
                    }
                    return;
                }
                End::Server(closed) => {
                    self.emit(closed.event());
                    if closed.action == CloseAction::Stop {
                        self.fatal = Some(closed.to_string());
                        self.stopped_by = closed.close;
                        self.publish();
                        return;
                    }
                    self.backoff.next_delay()
                }
                End::Retry(reason) => {
                    self.emit(Event::Disconnected { reason, fatal: false, close: None });
                    self.backoff.next_delay()
                }
                End::Lost(reason) => {
                    self.emit(Event::Disconnected { reason, fatal: false, close: None });
                    // The next server; with one, the same again.
                    self.current = (self.current + 1) % self.urls.len().max(1);
                    self.backoff.next_delay()
                }
                End::Now(reason) => {
                    self.emit(Event::Disconnected { reason, fatal: false, close: None });
                    Duration::from_millis(1)
                }
            };
            self.publish();
            if let Some(ack) = self.wait_offline(delay).await {
                self.publish();
                // See above: the closer may have given up waiting.
                let _ = ack.send(());
                return;
            }
        }
    }

    /// Sleeps `delay`, serving commands meanwhile. Returns the close acknowledgement if the
    /// application asked to close.
    async fn wait_offline(&mut self, delay: Duration) -> Option<oneshot::Sender<()>> {
        let until = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = sleep_until(until) => return None,
                cmd = self.cmd_rx.recv() => match cmd {
                    None => return Some(oneshot::channel().0),
                    Some(Command::Close(ack)) => return Some(ack),
                    Some(cmd) => {
                        // Offline: edits apply locally and wait; socket-only commands are moot.
                        let _ = self.command(cmd, None).await; // no socket: nothing can fail to send
                        self.publish();
                    }
                },
            }
        }
    }

    /// Handles a command; with a socket, sends what it produces.
    async fn command(&mut self, cmd: Command, mut ws: Option<&mut Outbox>) -> Result<Option<End>, String> {
        let now = now_since(self.start);
        let mut effects = Vec::new();
        match cmd {
            Command::Submit(ops, reply) => {
                let r = self.session.submit(&ops, now).map(|e| effects = e);
                // Published before the reply, so a caller that waits for `settled` next sees
                // the edit pending rather than the state before it.
                self.publish();
                // The caller may have stopped waiting; the edit stands either way.
                let _ = reply.send(r);
            }
            Command::Edit(make, reply) => {
                let r = self.session.edit(make, now).map(|(ops, e)| {
                    effects = e;
                    ops
                });
                // As above.
                self.publish();
                let _ = reply.send(r);
            }
            Command::Undo(undo, reply) => {
                let r = if undo { self.session.undo(now) } else { self.session.redo(now) };
                let r = r.map(|(outcome, e)| {
                    effects = e;
                    outcome
                });
                // As above.
                self.publish();
                let _ = reply.send(r);
            }
            Command::Group(begin) => {
                if begin {
                    self.session.begin_group()
                } else {
                    self.session.end_group()
                }
            }
            Command::Send(msg) => {
                if self.session.is_live() {
                    effects.push(Effect::Send(msg));
                }
            }
            Command::Transport(playing, position) => {
                let msg = self.session.set_transport(playing, position, now);
                if self.session.is_live() {
                    effects.push(Effect::Send(msg));
                }
            }
            Command::Duplicate => {
                if let Some(m) = self.session.duplicate() {
                    effects.push(Effect::Send(m));
                }
            }
            Command::SetUrls(urls) => {
                if !urls.is_empty() {
                    self.urls = urls;
                    self.current = 0;
                }
            }
            Command::Disconnect => {
                if let Some(out) = ws.as_deref_mut() {
                    out.close(CloseCode::Normal).await;
                    return Ok(Some(End::Retry("disconnected by the application".into())));
                }
            }
            Command::Kill => {
                if let Some(out) = ws.as_deref_mut() {
                    out.kill();
                    return Ok(Some(End::Retry("killed by the application".into())));
                }
            }
            Command::Stall(d) => {
                if let Some(out) = ws.as_deref_mut() {
                    out.stall_until = Some(tokio::time::Instant::now() + d);
                }
            }
            Command::Close(ack) => {
                if let Some(out) = ws.as_deref_mut() {
                    out.close(CloseCode::Normal).await;
                }
                return Ok(Some(End::Stop(Some(ack))));
            }
        }
        self.apply(effects, ws).await
    }

    /// Carries out effects; returns how the connection ends, if it does.
    async fn apply(&mut self, effects: Vec<Effect>, mut ws: Option<&mut Outbox>) -> Result<Option<End>, String> {
        let mut end = None;
        for e in effects {
            match e {
                Effect::Send(msg) => {
                    if let Some(out) = ws.as_deref_mut() {
                        out.send(serde_json::to_string(&msg).map_err(|e| e.to_string())?).await?;
                    }
                }
                Effect::Event(ev) => self.emit(ev),
                Effect::Reconnect { reload } => {
                    end = Some(End::Now(if reload { "reloading the state".into() } else { "resyncing".into() }));
                }
            }
        }
        if let (Some(out), Some(_)) = (ws, &end) {
            out.close(CloseCode::Normal).await;
        }
        Ok(end)
    }

    async fn run_socket(&mut self, ws: Ws) -> End {
        self.session.on_open();
        let mut out = Outbox {
            ws: Some(ws),
            delay: Delay { latency: self.config.latency, q: VecDeque::new() },
            stall_until: None,
        };
        let mut inbox = Delay { latency: self.config.latency, q: VecDeque::new() };
        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut last_rx = Instant::now();
        let end = loop {
            let stalled = out.stall_until.is_some_and(|t| t > tokio::time::Instant::now());
            if !stalled {
                out.stall_until = None;
            }
            let in_due = inbox.next_due().map_or_else(far_future, tokio::time::Instant::from_std);
            let out_due = out.delay.next_due().map_or_else(far_future, tokio::time::Instant::from_std);
            let stall_end = out.stall_until.unwrap_or_else(far_future);
            let Some(ws) = out.ws.as_mut() else { break End::Lost("socket gone".into()) };
            tokio::select! {
                frame = ws.next(), if !stalled => {
                    last_rx = Instant::now();
                    let frame = match frame {
                        None => break End::Lost("socket ended".into()),
                        Some(Err(e)) => break End::Lost(format!("socket error: {e}")),
                        Some(Ok(f)) => f,
                    };
                    if self.config.latency.is_zero() {
                        match self.frame(frame, &mut out).await {
                            Ok(None) => {}
                            Ok(Some(end)) => break end,
                            Err(e) => break End::Retry(e),
                        }
                    } else {
                        inbox.push(frame);
                    }
                }
                _ = sleep_until(in_due), if !stalled => {
                    let mut ended = None;
                    while let Some(frame) = inbox.pop_due(Instant::now()) {
                        match self.frame(frame, &mut out).await {
                            Ok(None) => {}
                            Ok(Some(end)) => { ended = Some(end); break; }
                            Err(e) => { ended = Some(End::Retry(e)); break; }
                        }
                    }
                    if let Some(end) = ended { break end; }
                }
                _ = sleep_until(out_due) => {
                    if let Err(e) = out.flush_due().await { break End::Lost(e); }
                }
                _ = sleep_until(stall_end), if stalled => {}
                cmd = self.cmd_rx.recv() => {
                    let Some(cmd) = cmd else {
                        out.close(CloseCode::Normal).await;
                        break End::Stop(None);
                    };
                    match self.command(cmd, Some(&mut out)).await {
                        Ok(None) => {}
                        Ok(Some(end)) => break end,
                        // Only sending fails here: the socket is gone.
                        Err(e) => break End::Lost(e),
                    }
                    self.publish();
                }
                _ = ping.tick() => {
                    if !stalled && last_rx.elapsed() > self.config.idle_timeout {
                        out.kill();
                        break End::Lost(format!("no frame for {:?}", self.config.idle_timeout));
                    }
                    if self.session.is_live() {
                        let msg = self.session.ping(now_since(self.start));
                        match serde_json::to_string(&msg) {
                            Ok(text) => if let Err(e) = out.send(text).await { break End::Lost(e); },
                            Err(e) => break End::Retry(e.to_string()),
                        }
                    }
                }
            }
        };
        match &end {
            // A failed socket is dropped without a close handshake.
            End::Retry(_) | End::Lost(_) | End::Now(_) => out.kill(),
            // Answer the server's close frame (bounded, best effort), so it need not wait for us.
            End::Server(_) => out.close(CloseCode::Normal).await,
            End::Stop(_) => self.backoff.reset(),
        }
        end
    }

    /// Handles one incoming frame.
    async fn frame(&mut self, frame: Message, out: &mut Outbox) -> Result<Option<End>, String> {
        let text = match frame {
            Message::Text(t) => t,
            Message::Close(f) => {
                // No close frame body: 1005, "no status received" (RFC 6455 §7.1.5).
                let (code, reason) = f.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                return Ok(Some(End::Server(self.session.on_server_close(code, &reason))));
            }
            Message::Binary(_) => return Err("binary frame from the server".into()),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(None),
        };
        let msg = match decode_server(text.as_str()) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(room = %self.config.room, pk = %self.config.pk, "undecodable server frame: {e}");
                return Ok(None);
            }
        };
        let was_live = self.session.is_live();
        let effects = match self.session.handle(msg, now_since(self.start)) {
            Ok(e) => e,
            Err(e) => return Err(format!("protocol error: {e}")),
        };
        if !was_live && self.session.is_live() {
            self.backoff.reset();
        }
        let end = self.apply(effects, Some(out)).await?;
        self.publish();
        Ok(end)
    }
}

/// The write side of one socket, with the added latency and the stall state.
struct Outbox {
    ws: Option<Ws>,
    delay: Delay<String>,
    stall_until: Option<tokio::time::Instant>,
}

impl Outbox {
    async fn send(&mut self, text: String) -> Result<(), String> {
        if !self.delay.latency.is_zero() {
            self.delay.push(text);
            return Ok(());
        }
        match self.ws.as_mut() {
            Some(ws) => ws.send(Message::text(text)).await.map_err(|e| format!("send failed: {e}")),
            None => Err("socket gone".into()),
        }
    }

    async fn flush_due(&mut self) -> Result<(), String> {
        let now = Instant::now();
        while let Some(text) = self.delay.pop_due(now) {
            match self.ws.as_mut() {
                Some(ws) => ws.send(Message::text(text)).await.map_err(|e| format!("send failed: {e}"))?,
                None => return Err("socket gone".into()),
            }
        }
        Ok(())
    }

    async fn close(&mut self, code: CloseCode) {
        if let Some(mut ws) = self.ws.take() {
            let frame = CloseFrame { code, reason: "".into() };
            // Best effort: the peer may be gone already, and the socket is dropped next anyway.
            let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(Some(frame))).await;
        }
    }

    fn kill(&mut self) {
        if let Some(ws) = self.ws.take() {
            if let MaybeTlsStream::Plain(tcp) = ws.get_ref() {
                // Reset instead of FIN; if it fails the drop still closes the socket.
                let _ = tcp.set_zero_linger();
            }
        }
    }
}
